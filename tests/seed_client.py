"""The Python client of the protocol's original guide ("WebSocket Communication" of the AI Agent Framework, the
FastAPI server whose protocol agentcast speaks: the README's "The protocol"), copied VERBATIM from its
"### Python Client" section.

Keep it unchanged (only the class, its imports and logging setup): where a copy of the guide sits beside the project
(../shared/seed/websocket-communication.md), tests/test_seed_client.py checks this file against it.
"""
import asyncio
import json
import uuid
import websockets
import logging

logging.basicConfig(level=logging.INFO)
logger = logging.getLogger(__name__)

class AgentWebSocketClient:
    def __init__(self, url="ws://localhost:5050/ws"):
        self.url = url
        self.connected = False
        self.websocket = None
        self.client_id = str(uuid.uuid4())
        self.current_agent_id = None
        self.reconnect_attempts = 0
        self.max_reconnect_attempts = 5
        self.callbacks = {
            "connected": [],
            "subscribed": [],
            "response": [],
            "agent_thinking": [],
            "agent_done": [],
            "error": [],
            "ping": []
        }

    async def connect(self):
        """Connect to the WebSocket server."""
        try:
            self.websocket = await websockets.connect(self.url)
            self.connected = True
            logger.info("Connected to WebSocket server")

            # Start listener
            asyncio.create_task(self._listen())

            return True
        except Exception as e:
            logger.error(f"Connection error: {str(e)}")
            return False

    async def _listen(self):
        """Listen for messages from the server."""
        try:
            while self.connected:
                try:
                    message = await self.websocket.recv()
                    data = json.loads(message)
                    logger.debug(f"Received: {data}")

                    # Execute callbacks for this message type
                    message_type = data.get("type")
                    if message_type in self.callbacks:
                        for callback in self.callbacks[message_type]:
                            try:
                                await callback(data)
                            except Exception as e:
                                logger.error(f"Error in callback: {str(e)}")
                except websockets.ConnectionClosed:
                    logger.warning("Connection closed")
                    self.connected = False
                    await self._try_reconnect()
                    break
        except Exception as e:
            logger.error(f"Listener error: {str(e)}")
            self.connected = False

    async def _try_reconnect(self):
        """Try to reconnect to the server."""
        if self.reconnect_attempts >= self.max_reconnect_attempts:
            logger.error("Max reconnect attempts reached")
            return False

        self.reconnect_attempts += 1
        delay = 1 * self.reconnect_attempts
        logger.info(f"Reconnecting in {delay}s (attempt {self.reconnect_attempts}/{self.max_reconnect_attempts})...")

        await asyncio.sleep(delay)

        success = await self.connect()
        if success and self.current_agent_id:
            # Resubscribe to the previous agent
            await self.subscribe_to_agent(self.current_agent_id)

        return success

    async def send_json(self, data):
        """Send JSON data to the server."""
        if not self.connected:
            logger.error("Cannot send message: not connected")
            return False

        try:
            await self.websocket.send(json.dumps(data))
            return True
        except Exception as e:
            logger.error(f"Send error: {str(e)}")
            self.connected = False
            return False

    async def send_ping(self):
        """Send a ping message to keep the connection alive."""
        return await self.send_json({"type": "ping"})

    async def subscribe_to_agent(self, agent_id):
        """Subscribe to an agent's messages."""
        self.current_agent_id = agent_id
        return await self.send_json({
            "type": "subscribe",
            "agent_id": agent_id
        })

    async def send_chat_message(self, message, agent_id=None):
        """Send a chat message to an agent."""
        if not agent_id and not self.current_agent_id:
            logger.error("No agent ID specified")
            return False

        return await self.send_json({
            "type": "chat",
            "agent_id": agent_id or self.current_agent_id,
            "message": message
        })

    def on(self, message_type, callback):
        """Register a callback for a message type."""
        if message_type in self.callbacks:
            self.callbacks[message_type].append(callback)
        return self

    async def close(self):
        """Close the WebSocket connection."""
        if self.websocket:
            await self.websocket.close()
            self.connected = False
            logger.info("Connection closed")
