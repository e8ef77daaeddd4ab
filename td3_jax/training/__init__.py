"""The training program: config, the host loop (`Trainer`), evaluation, run logs, the divergence guard, data parallelism."""
