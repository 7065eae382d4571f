"""The engine: sequences, the paged block manager, the scheduler, the model runner, and the sync/async engines."""
