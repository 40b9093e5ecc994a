"""One module per operation the central system may call; see firmware/ocpp16/router.py."""
