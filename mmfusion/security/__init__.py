"""Security: transport (TLS), authentication, authorisation, limits, audit log, encryption, model integrity."""
