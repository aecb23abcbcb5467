"""Statistical validation of poolwise that takes longer than a unit test (``make validate``)."""
