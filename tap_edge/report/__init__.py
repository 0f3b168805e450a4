"""Step 6, one HTML page from the documents other commands wrote (plots inline, nothing fetched)."""
