"""`[api] listen`: the HTTP API, a thread of the daemon (server.py) over the same ledger and ingest
code as the CLI (actions.py): uploads (uploads.py), jobs, their text and files, retry, pause, status
and search, behind a bearer token (auth.py). Routes and their errors: app.py."""

URL_KEY = "api_url"          # ledger meta: where the running daemon serves the API (`ocrd status`)
