"""Planning: how many prefill/decode replicas at which tensor parallelism (pure, no cluster access)."""
