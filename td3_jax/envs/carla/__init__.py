"""The CARLA backend: server processes, the client session, the env and its pure logic. `carla` is imported on use."""
