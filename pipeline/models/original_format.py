"""Original-format InternVL checkpoints (`model_type: internvl_chat`), only when the user opts
in with `model.trust_remote_code: true`: they run the modelling code of their repository.

The remote `InternVLChatModel.generate(pixel_values, input_ids, attention_mask, **kwargs)`
embeds the prompt itself (its `img_context_token_id` marks where the image features go)
and returns only the new tokens. `OriginalFormatModel` adapts it to the interface
`HFEngine` drives (the -hf class's `generate`, which returns prompt + answer), so both
formats share the same batching, stop-token and decoding rules. The -hf checkpoints are
the tested path; this adapter cannot be exercised without the remote code.
"""

from __future__ import annotations

from typing import Any

from pipeline.prompts.template import IMG_CONTEXT


class _TextConfigView:
    """What HFEngine reads from a config: the language model's (`llm_config` here)."""

    def __init__(self, config: Any) -> None:
        self._config = config

    def get_text_config(self) -> Any:
        return self._config.llm_config

    def __getattr__(self, name: str) -> Any:
        return getattr(self._config, name)


class OriginalFormatModel:
    """The remote InternVLChatModel behind the -hf `generate` contract."""

    def __init__(self, model: Any, img_context_token_id: int) -> None:
        model.img_context_token_id = img_context_token_id
        self.model = model
        self.config = _TextConfigView(model.config)

    def parameters(self) -> Any:
        return self.model.parameters()

    def eval(self) -> OriginalFormatModel:
        self.model.eval()
        return self

    def generate(self, input_ids: Any, attention_mask: Any, pixel_values: Any = None, **kwargs: Any) -> Any:
        """Prompt ids followed by the new tokens, as the -hf class returns them."""
        import torch

        new_tokens = self.model.generate(
            pixel_values=pixel_values, input_ids=input_ids, attention_mask=attention_mask, **kwargs
        )
        return torch.cat([input_ids, new_tokens.to(input_ids.device)], dim=1)


def load_original_format(checkpoint: str, kwargs: dict[str, Any]) -> tuple[OriginalFormatModel, Any]:
    """Load an original-format checkpoint with its remote code: only with `model.trust_remote_code`,
    which arrives as `kwargs["trust_remote_code"]` and is refused here when it is not true."""
    from transformers import AutoModel, AutoTokenizer

    if kwargs.get("trust_remote_code") is not True:
        raise ValueError("an original-format checkpoint runs remote code: needs model.trust_remote_code: true")
    kwargs = dict(kwargs)
    # The remote code has its own switch for flash attention instead of attn_implementation.
    kwargs["use_flash_attn"] = kwargs.pop("attn_implementation", None) == "flash_attention_2"
    tokenizer = AutoTokenizer.from_pretrained(
        checkpoint, revision=kwargs.get("revision"), trust_remote_code=kwargs["trust_remote_code"], use_fast=False
    )
    model = AutoModel.from_pretrained(checkpoint, low_cpu_mem_usage=True, **kwargs)
    image_token: Any = tokenizer.convert_tokens_to_ids(IMG_CONTEXT)
    return OriginalFormatModel(model, int(image_token)), tokenizer
