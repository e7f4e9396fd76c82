"""What the relay and the operator share, owned by neither: the GPT-Omni protocol client
(`upstream`), the pool-file contract between them (`pool_file`), the setting types both
read their environment with (`setting_types`) and structured logging (`logging_setup`)."""
