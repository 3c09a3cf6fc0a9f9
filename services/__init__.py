"""Ray services: actors that hold model replicas and do the measurement's tiles, and the
executor and operators that shard work over them. `adaptsym` itself never imports Ray."""
