"""The `tiergate` command: the operator's CLI, the supervisor of `tiergate up`, the embedded Redis, dlq."""
