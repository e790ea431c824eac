"""Faces of Ensemble-Hub for other libraries: LangChain (`langchain`), LiteLLM (`litellm`), HTTP (`server`).

Each module imports only `ensemblehub_core` and its own third-party library, so installing one extra is enough
to use its face.
"""
