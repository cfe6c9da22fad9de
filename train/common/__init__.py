"""What several jobs of ``train`` share: atomic file writes, number formatting for reports."""
