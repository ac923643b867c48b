"""The HTTP front: FastAPI app factory, routes, schemas, error handling.

Imports core/, db/ and the sending facade `tasks.send` only; never workers/ or torch.
"""
