"""Voice preparation (decode, validate, trim an uploaded recording) and the speaker encoder
(embeddings and similarity). Only workers import this: it needs numpy, soundfile and torch."""

from workers.voices.encoder import EMBEDDING_DIM, embed, similarity

__all__ = ["EMBEDDING_DIM", "embed", "similarity"]
