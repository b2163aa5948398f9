"""Outputs of a finished document: markdown, searchable PDF, JSON and plain text."""
