HEARTBEAT_S = 2.0  # a watch stream with no events still sends a batch this often
