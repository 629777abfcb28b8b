// Placeholder: the JavaScript client of agentcast replaces this file.
