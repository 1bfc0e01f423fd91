"""Core room: the versioned prompt template schema and the shipped template library."""
