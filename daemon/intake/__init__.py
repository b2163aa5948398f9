"""Intake: inbox folders -> spool -> jobs (watcher, ingest and its crash journal, start-up reconcile)."""
