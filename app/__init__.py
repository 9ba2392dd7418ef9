"""twice: an OpenAI-compatible gateway that makes the model think twice."""

__version__ = "0.1.0"
