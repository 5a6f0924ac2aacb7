"""Planning: which type each tensor gets, why, and what it costs."""
