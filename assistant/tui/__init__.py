"""The Textual chat app (`ragdesk chat`). Only the CLI imports it; `command.py` holds the click command and
`app.py` the app. Nothing here is imported by `ragdesk --help`."""
