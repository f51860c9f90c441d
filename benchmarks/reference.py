"""The comparison baselines: the InternVL3 model card's way, written out in this repo.

`load_image` is the model card's preprocessing: `Image.open(...).convert('RGB')`,
`dynamic_preprocess` (one bicubic resize to the chosen grid, a Pillow crop per tile, a
thumbnail), then torchvision's `build_transform` per tile (convert if needed, Resize to
448 - a no-op on 448 px tiles, ToTensor, Normalize with the ImageNet mean/std) and
`torch.stack`. torchvision is not available on these machines, so ToTensor and
Normalize are written with torch exactly as torchvision computes them (uint8 HWC ->
CHW float32 / 255; a copy, then `sub_(mean).div_(std)`).

`SequentialCaptioner` is the model card's inference loop: one image at a time, tiled,
normalised, `model.generate` with batch 1 and greedy decoding.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np
from PIL import Image

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
INPUT_SIZE = 448


def find_closest_aspect_ratio(
    aspect_ratio: float, target_ratios: list[tuple[int, int]], width: int, height: int, image_size: int
) -> tuple[int, int]:
    """The model card's grid choice (closest ratio; on a tie the larger grid if the image is big enough)."""
    best_ratio_diff = float("inf")
    best_ratio = (1, 1)
    area = width * height
    for ratio in target_ratios:
        target_aspect_ratio = ratio[0] / ratio[1]
        ratio_diff = abs(aspect_ratio - target_aspect_ratio)
        if ratio_diff < best_ratio_diff:
            best_ratio_diff = ratio_diff
            best_ratio = ratio
        elif ratio_diff == best_ratio_diff and area > 0.5 * image_size * image_size * ratio[0] * ratio[1]:
            best_ratio = ratio
    return best_ratio


def dynamic_preprocess(
    image: Image.Image, min_num: int = 1, max_num: int = 12, image_size: int = INPUT_SIZE, use_thumbnail: bool = True
) -> list[Image.Image]:
    """The model card's tiling: resize to the grid, crop each tile with Pillow, append a thumbnail."""
    orig_width, orig_height = image.size
    aspect_ratio = orig_width / orig_height
    target_ratios = sorted(
        {
            (i, j)
            for n in range(min_num, max_num + 1)
            for i in range(1, n + 1)
            for j in range(1, n + 1)
            if min_num <= i * j <= max_num
        },
        key=lambda x: x[0] * x[1],
    )
    target_aspect_ratio = find_closest_aspect_ratio(aspect_ratio, target_ratios, orig_width, orig_height, image_size)
    target_width = image_size * target_aspect_ratio[0]
    target_height = image_size * target_aspect_ratio[1]
    blocks = target_aspect_ratio[0] * target_aspect_ratio[1]
    resized_img = image.resize((target_width, target_height))
    processed_images = []
    for i in range(blocks):
        box = (
            (i % (target_width // image_size)) * image_size,
            (i // (target_width // image_size)) * image_size,
            ((i % (target_width // image_size)) + 1) * image_size,
            ((i // (target_width // image_size)) + 1) * image_size,
        )
        processed_images.append(resized_img.crop(box))
    if use_thumbnail and len(processed_images) != 1:
        processed_images.append(image.resize((image_size, image_size)))
    return processed_images


def to_tensor(pic: Image.Image):  # -> torch.Tensor
    """torchvision's ToTensor for an 8-bit PIL image: HWC uint8 -> CHW float32 in [0, 1]."""
    import torch

    img = torch.from_numpy(np.array(pic, np.uint8, copy=True))
    img = img.view(pic.size[1], pic.size[0], len(pic.getbands()))
    img = img.permute((2, 0, 1)).contiguous()
    return img.to(dtype=torch.get_default_dtype()).div(255)


def normalize(tensor, mean=IMAGENET_MEAN, std=IMAGENET_STD):  # -> torch.Tensor
    """torchvision's Normalize (not in place): a copy, then `sub_(mean).div_(std)` per channel."""
    import torch

    tensor = tensor.clone()
    mean_t = torch.as_tensor(mean, dtype=tensor.dtype, device=tensor.device).view(-1, 1, 1)
    std_t = torch.as_tensor(std, dtype=tensor.dtype, device=tensor.device).view(-1, 1, 1)
    return tensor.sub_(mean_t).div_(std_t)


def transform(img: Image.Image, input_size: int = INPUT_SIZE):  # -> torch.Tensor
    """The model card's build_transform: RGB, Resize((448, 448), BICUBIC), ToTensor, Normalize."""
    if img.mode != "RGB":
        img = img.convert("RGB")
    if img.size != (input_size, input_size):  # torchvision's resize returns the image itself when sizes match
        img = img.resize((input_size, input_size), Image.Resampling.BICUBIC)
    return normalize(to_tensor(img))


def load_image(image_file: str, input_size: int = INPUT_SIZE, max_num: int = 12):  # -> torch.Tensor
    """The model card's `load_image`: pixel_values of shape (tiles, 3, 448, 448), float32."""
    import torch

    image = Image.open(image_file).convert("RGB")
    images = dynamic_preprocess(image, image_size=input_size, use_thumbnail=True, max_num=max_num)
    pixel_values = [transform(tile, input_size) for tile in images]
    return torch.stack(pixel_values)


def reference_tiles(image_file: str, max_num: int = 12) -> np.ndarray:
    """The model card's uint8 tiles (before ToTensor), for bit-exactness checks."""
    image = Image.open(image_file).convert("RGB")
    return np.stack([np.asarray(tile) for tile in dynamic_preprocess(image, max_num=max_num)])


@dataclass
class SequentialResult:
    """What the sequential script produced: answers and when each one was ready."""

    texts: list[str]
    done_at: list[float]  # seconds since the script started, one per row
    load_s: float  # model load time (and the choice of thread count)
    threads: int = 1  # torch threads used


class SequentialCaptioner:
    """The model card's loop: load the model, then per image: load_image, generate (batch 1, greedy)."""

    def __init__(self, checkpoint: str, max_num: int, max_new_tokens: int, question: str, system: str) -> None:
        import torch
        from transformers import AutoTokenizer, InternVLForConditionalGeneration

        self.torch = torch
        self.tokenizer = AutoTokenizer.from_pretrained(checkpoint)
        self.model = InternVLForConditionalGeneration.from_pretrained(checkpoint, dtype=torch.float32).eval()
        self.max_num = max_num
        self.max_new_tokens = max_new_tokens
        self.question = question
        self.system = system
        self.stop_id = self.tokenizer.convert_tokens_to_ids("<|im_end|>")
        self.threads = torch.get_num_threads()

    def prompt(self, num_tiles: int) -> str:
        """The internvl2_5 template with the image run, as the model card's `chat` builds it."""
        image_tokens = "<img>" + "<IMG_CONTEXT>" * (256 * num_tiles) + "</img>"
        query = f"<image>\n{self.question}".replace("<image>", image_tokens, 1)
        return (
            f"<|im_start|>system\n{self.system}<|im_end|>\n<|im_start|>user\n{query}<|im_end|>\n<|im_start|>assistant\n"
        )

    def answer(self, image_file: str) -> str:
        """One image, one generate call."""
        torch = self.torch
        pixel_values = load_image(image_file, max_num=self.max_num)
        inputs = self.tokenizer([self.prompt(len(pixel_values))], return_tensors="pt", add_special_tokens=False)
        with torch.inference_mode():
            output = self.model.generate(
                input_ids=inputs["input_ids"],
                attention_mask=inputs["attention_mask"],
                pixel_values=pixel_values,
                max_new_tokens=self.max_new_tokens,
                do_sample=False,
                eos_token_id=self.stop_id,
                pad_token_id=self.tokenizer.pad_token_id,
            )
        tokens = output[0, inputs["input_ids"].shape[1] :].tolist()
        if self.stop_id in tokens:
            tokens = tokens[: tokens.index(self.stop_id)]
        return str(self.tokenizer.decode(tokens, skip_special_tokens=True)).strip()


def best_thread_count(captioner: SequentialCaptioner, files: list[str]) -> int:
    """The faster of 1 thread and torch's default for this machine, timed on a few images.

    torch's default (one thread per core) helps on a quiet machine and hurts badly on a
    busy one (spinning threads wait for each other); the baseline gets its best setting.
    """
    import torch

    default = torch.get_num_threads()
    sample = files[: min(3, len(files))]
    timings = {}
    for threads in sorted({1, default}):
        torch.set_num_threads(threads)
        captioner.answer(sample[0])  # warm-up
        started = time.perf_counter()
        for path in sample:
            captioner.answer(path)
        timings[threads] = time.perf_counter() - started
    best = min(timings, key=lambda t: timings[t])
    torch.set_num_threads(best)
    return best


def run_sequential(
    checkpoint: str, files: list[str], max_num: int, max_new_tokens: int, question: str, system: str
) -> SequentialResult:
    """Caption `files` one at a time; times are measured from the call."""
    started = time.perf_counter()
    captioner = SequentialCaptioner(checkpoint, max_num, max_new_tokens, question, system)
    captioner.threads = best_thread_count(captioner, files)
    load_s = time.perf_counter() - started
    texts: list[str] = []
    done_at: list[float] = []
    for path in files:
        texts.append(captioner.answer(path))
        done_at.append(time.perf_counter() - started)
    return SequentialResult(texts=texts, done_at=done_at, load_s=load_s, threads=captioner.threads)
