"""The learning core: networks, optimizers and the jitted TD3 update. Imports no env, loop, I/O or CLI code."""
