"""What several jobs of ``train`` share, one implementation each: atomic file writes
(``files``), the repository and a child's environment (``paths``), the learning-rate schedule
(``schedule``), the device choice (``devices``), model inputs of token ids (``batching``),
AdamW parameter groups (``optim``), JSON-safe values (``serialization``), what a model
package records (``packages``) and number formatting for reports (``formatting``)."""
