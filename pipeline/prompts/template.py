"""The `internvl2_5` chat template that InternVL3 checkpoints were trained with.

Pure string functions, no tokenizer: the prompt is built as text exactly as the
reference `chat`/`batch_chat` builds it (system turn, user turn, open assistant turn),
then each `<image>` placeholder is replaced, in order, by `<img>`, 256 `<IMG_CONTEXT>`
per tile of that image, and `</img>`. The -hf checkpoints' processor leaves the system
turn out; we put it back because the model was trained with it.
"""

from __future__ import annotations

from collections.abc import Sequence

DEFAULT_SYSTEM_MESSAGE = (
    "你是书生·万象，英文名是InternVL，是由上海人工智能实验室、清华大学及多家合作单位联合开发的多模态大语言模型。"
)
IMAGE_PLACEHOLDER = "<image>"
IMG_START = "<img>"
IMG_END = "</img>"
IMG_CONTEXT = "<IMG_CONTEXT>"
IM_START = "<|im_start|>"
IM_END = "<|im_end|>"
STOP_TOKEN = IM_END
IMAGE_TOKENS_PER_TILE = 256  # (448 / 14) ** 2 * 0.5 ** 2


class PromptError(ValueError):
    """The question and the images of a row do not fit together."""


def single_image_query(question: str) -> str:
    """A question about one image: `<image>\\n{question}` (unless it places the image itself)."""
    return question if IMAGE_PLACEHOLDER in question else f"{IMAGE_PLACEHOLDER}\n{question}"


def multi_image_query(question: str, num_images: int) -> str:
    """A question about several images: `Image-1: <image>\\nImage-2: <image>\\n...{question}`."""
    if IMAGE_PLACEHOLDER in question:
        return question
    prefix = "".join(f"Image-{i}: {IMAGE_PLACEHOLDER}\n" for i in range(1, num_images + 1))
    return prefix + question


def video_query(question: str, num_frames: int) -> str:
    """A question about a video: `Frame1: <image>\\nFrame2: <image>\\n...{question}`."""
    if IMAGE_PLACEHOLDER in question:
        return question
    prefix = "".join(f"Frame{i}: {IMAGE_PLACEHOLDER}\n" for i in range(1, num_frames + 1))
    return prefix + question


def chat_prompt(query: str, system_message: str | None = DEFAULT_SYSTEM_MESSAGE) -> str:
    """Wrap a user query in the internvl2_5 turns, ready for generation."""
    system = f"{IM_START}system\n{system_message}{IM_END}\n" if system_message else ""
    return f"{system}{IM_START}user\n{query}{IM_END}\n{IM_START}assistant\n"


def image_token_run(num_tiles: int, tokens_per_tile: int = IMAGE_TOKENS_PER_TILE) -> str:
    """The token run that stands for one image of `num_tiles` tiles."""
    return IMG_START + IMG_CONTEXT * (tokens_per_tile * num_tiles) + IMG_END


def expand_image_placeholders(
    prompt: str, tiles_per_image: Sequence[int], tokens_per_tile: int = IMAGE_TOKENS_PER_TILE
) -> str:
    """Replace each `<image>` placeholder, in order, by the token run of its image."""
    count = prompt.count(IMAGE_PLACEHOLDER)
    if count != len(tiles_per_image):
        raise PromptError(
            f"the prompt has {count} {IMAGE_PLACEHOLDER} placeholder(s) but the row has {len(tiles_per_image)} image(s)"
        )
    pieces = prompt.split(IMAGE_PLACEHOLDER)
    out = [pieces[0]]
    for num_tiles, piece in zip(tiles_per_image, pieces[1:], strict=True):
        out.append(image_token_run(num_tiles, tokens_per_tile))
        out.append(piece)
    return "".join(out)


def build_prompt(
    query: str,
    tiles_per_image: Sequence[int],
    system_message: str | None = DEFAULT_SYSTEM_MESSAGE,
    tokens_per_tile: int = IMAGE_TOKENS_PER_TILE,
) -> str:
    """The exact prompt string the reference feeds the tokenizer for this query and images."""
    return expand_image_placeholders(chat_prompt(query, system_message), tiles_per_image, tokens_per_tile)
