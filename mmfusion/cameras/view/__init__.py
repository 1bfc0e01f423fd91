"""The live page: Starlette routes (app.py), who may watch (auth.py), the uvicorn thread (server.py), static files."""
