from support import connect
async def test_smoke(server):
    async with connect(server.port) as c:
        assert c.hello["type"] == "connected"
        frames = await c.request({"type": "chat", "agent_id": "my_agent", "message": "hi"}, "agent_done")
        assert [f["type"] for f in frames][0] == "agent_thinking"
