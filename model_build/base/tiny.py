"""The embedded default: a tiny native Florence-2 and an offline tokenizer with Florence-2's special tokens.

Real Florence-2 weights cannot be downloaded here, so the demo, tests and CI run on this model. It keeps
the real architecture (DaViT vision tower, projector, BART encoder-decoder) at toy widths, so every code
path (processor, LoRA targets `q_proj`/`v_proj`, merge, int8, generation) is the one used at full size.
"""

from __future__ import annotations

from pathlib import Path

from handler.florence.tasks import (
    IMAGE_MEAN,
    IMAGE_SIZE,
    IMAGE_STD,
    LOC_BINS,
    TASK_PROMPTS,
    loc_token,
    num_image_tokens,
)

EMBEDDED_DIR = Path(__file__).parents[1] / "embedded" / "tiny-florence2"
TINY_BASE_ID = "tiny"

# Florence-2's task tokens and the extra markers its tokenizer carries, so prompts tokenize the same way.
FLORENCE_TASK_TOKENS = [
    "<OCR>",
    "<OCR_WITH_REGION>",
    "<CAPTION>",
    "<DETAILED_CAPTION>",
    "<MORE_DETAILED_CAPTION>",
    "<OD>",
    "<DENSE_REGION_CAPTION>",
    "<CAPTION_TO_PHRASE_GROUNDING>",
    "<REFERRING_EXPRESSION_SEGMENTATION>",
    "<REGION_TO_SEGMENTATION>",
    "<OPEN_VOCABULARY_DETECTION>",
    "<REGION_TO_CATEGORY>",
    "<REGION_TO_DESCRIPTION>",
    "<REGION_TO_OCR>",
    "<REGION_PROPOSAL>",
    "<od>",
    "</od>",
    "<ocr>",
    "</ocr>",
    "<poly>",
    "</poly>",
    "<sep>",
]
TOKENIZER_VOCAB_SIZE = 400
"""Byte-level BPE merges learned from the prompts and the synthetic vocabulary; bytes cover the rest."""


def build_tokenizer(corpus: list[str]):
    """Train a byte-level BPE offline and add Florence-2's task, image and `<loc_N>` tokens."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    core = Tokenizer(models.BPE(unk_token="<unk>"))
    core.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    core.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=TOKENIZER_VOCAB_SIZE,
        special_tokens=["<s>", "<pad>", "</s>", "<unk>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    core.train_from_iterator(list(TASK_PROMPTS.values()) + corpus, trainer)
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=core,
        bos_token="<s>",
        eos_token="</s>",
        pad_token="<pad>",
        unk_token="<unk>",
        extra_special_tokens={"image_token": "<image>"},
        model_max_length=1024,
    )
    tokenizer.add_tokens(FLORENCE_TASK_TOKENS + [loc_token(i) for i in range(LOC_BINS)], special_tokens=False)
    return tokenizer


def build_image_processor(image_size: int = IMAGE_SIZE):
    """CLIP-style preprocessing as Florence-2 uses it: squash-resize (no crop), ImageNet mean/std."""
    from transformers import CLIPImageProcessorPil

    return CLIPImageProcessorPil(
        do_resize=True,
        size={"height": image_size, "width": image_size},
        do_center_crop=False,
        crop_size={"height": image_size, "width": image_size},
        do_rescale=True,
        rescale_factor=1 / 255,
        do_normalize=True,
        image_mean=list(IMAGE_MEAN),
        image_std=list(IMAGE_STD),
        resample=3,
        image_seq_length=num_image_tokens(image_size),
    )


def build_processor(tokenizer, image_size: int = IMAGE_SIZE):
    from transformers import Florence2Processor

    return Florence2Processor(image_processor=build_image_processor(image_size), tokenizer=tokenizer)


def tiny_config(tokenizer):
    """Florence-2's layout at toy widths (~2M parameters): every module type of the real model is present."""
    from transformers import BartConfig, Florence2Config, Florence2VisionConfig

    text = BartConfig(
        vocab_size=len(tokenizer),
        d_model=128,
        encoder_layers=2,
        decoder_layers=2,
        encoder_attention_heads=4,
        decoder_attention_heads=4,
        encoder_ffn_dim=384,
        decoder_ffn_dim=384,
        max_position_embeddings=512,
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        decoder_start_token_id=tokenizer.eos_token_id,
        forced_eos_token_id=tokenizer.eos_token_id,
        dropout=0.0,
        attention_dropout=0.0,
        scale_embedding=False,
    )
    vision = Florence2VisionConfig(
        # A stride-16 stem (Florence-2's is 4) and stride-1 last stages keep the total stride at 32, so a
        # 384 image still gives Florence-2's 12x12 grid (145 tokens). Measured on 2 cores at batch 32: a
        # training step costs 0.53 s against 0.76 s with a stride-8 stem, and it learned at least as fast.
        patch_size=[17, 3, 3, 3],
        patch_stride=[16, 2, 1, 1],
        patch_padding=[8, 1, 1, 1],
        embed_dim=[16, 32, 64, 128],
        depths=[1, 1, 2, 1],
        num_heads=[1, 2, 2, 4],
        num_groups=[1, 2, 2, 4],
        projection_dim=128,
        window_size=12,
        drop_path_rate=0.0,
    )
    return Florence2Config(vision_config=vision, text_config=text, image_token_id=tokenizer.image_token_id)


def new_tiny_model(tokenizer, seed: int = 0):
    """A freshly initialised tiny Florence-2 (random weights, deterministic by seed)."""
    import torch
    from transformers import Florence2ForConditionalGeneration

    torch.manual_seed(seed)
    model = Florence2ForConditionalGeneration(tiny_config(tokenizer))
    _init_location_embeddings(model, tokenizer)
    _init_image_position_embeddings(model)
    return model


def _sinusoid(positions, dim: int):
    """sin/cos of `positions` (fractions of the image side) at octave-spaced frequencies."""
    import math

    import torch

    frequencies = torch.pow(2.0, torch.arange(dim // 2, dtype=torch.float32) * 7 / (dim // 2)) * math.pi
    angles = positions.unsqueeze(1) * frequencies
    return torch.cat([torch.sin(angles), torch.cos(angles)], dim=1)


def _init_image_position_embeddings(model) -> None:
    """Give each cell of the 12x12 visual grid a clear sinusoidal code of its row and column.

    The projector's learned row/column embeddings start as tiny random vectors, so a from-scratch
    model has no idea where anything is and `<OD>` does not learn. The code uses the same
    frequencies as the `<loc_N>` embeddings, so reading a box off the grid starts out simple.
    """
    import torch

    from handler.florence.tasks import IMAGE_SIZE, VISION_STRIDE

    grid = IMAGE_SIZE // VISION_STRIDE
    embed = model.model.multi_modal_projector.image_position_embed
    for table in (embed.row_embeddings, embed.column_embeddings):
        count, dim = table.weight.shape
        centres = (torch.arange(count, dtype=torch.float32) + 0.5) / grid
        with torch.no_grad():
            table.weight.copy_(_sinusoid(centres, dim))


def _init_location_embeddings(model, tokenizer) -> None:
    """Give `<loc_i>` embeddings a smooth sinusoidal code of i, so neighbouring bins start out similar.

    With tied input/output embeddings, a near miss then costs little from the first step, and a tiny
    model learns to place boxes in minutes instead of hours.
    """
    import torch

    embeddings = model.get_input_embeddings().weight
    ids = tokenizer.convert_tokens_to_ids([loc_token(i) for i in range(LOC_BINS)])
    code = _sinusoid((torch.arange(LOC_BINS, dtype=torch.float32) + 0.5) / LOC_BINS, embeddings.shape[1])
    with torch.no_grad():
        embeddings[ids] = code * embeddings.std()
