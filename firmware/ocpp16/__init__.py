"""OCPP 1.6J (JSON over WebSocket) as a station backend; see docs/ocpp.md."""
