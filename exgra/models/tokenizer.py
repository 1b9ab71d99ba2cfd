"""Special tokens and the built-in byte-level BPE tokenizer of the tiny/small models.

The built-in tokenizer is trained at build time (about 0.1 s) on a small English medical corpus that
ships in this module, so tiny models need no download. It is byte level, so any text round-trips, and
the training is deterministic: every build gives the same ids.
"""

from __future__ import annotations

import functools
import itertools
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from transformers import PreTrainedTokenizerBase, PreTrainedTokenizerFast

__all__ = [
    "BOS_TOKEN",
    "EOS_TOKEN",
    "IMAGE_END_TOKEN",
    "IMAGE_PATCH_TOKEN",
    "IMAGE_START_TOKEN",
    "PAD_TOKEN",
    "UNK_TOKEN",
    "add_image_tokens",
    "build_tiny_tokenizer",
    "reference_token_spans",
    "sentencepiece_model_file",
]

BOS_TOKEN = "<s>"
EOS_TOKEN = "</s>"
UNK_TOKEN = "<unk>"
PAD_TOKEN = "[PAD]"
IMAGE_PATCH_TOKEN = "<im_patch>"
IMAGE_START_TOKEN = "<im_start>"
IMAGE_END_TOKEN = "<im_end>"
IMAGE_TOKENS = (IMAGE_PATCH_TOKEN, IMAGE_START_TOKEN, IMAGE_END_TOKEN)

_SYSTEM = (
    "A chat between a curious human and an artificial intelligence assistant. The assistant gives "
    "helpful, detailed, and polite answers to the human's questions."
)
_MODALITIES = (
    "chest x-ray radiograph ct scan computed tomography mri magnetic resonance image ultrasound "
    "sonography mammogram fundus photograph histology pathology slide microscopy angiogram pet "
    "dermoscopy endoscopy echocardiogram fluoroscopy"
)
_ANATOMY = (
    "lung lungs heart liver kidney kidneys brain spine chest abdomen pelvis bone bones skull "
    "rib ribs femur knee shoulder hip colon stomach pancreas spleen bladder prostate breast "
    "thyroid aorta artery vein ventricle atrium retina cornea skin muscle tissue cell cells "
    "nucleus gland lymph node nodes trachea bronchus diaphragm pleura mediastinum cortex"
)
_FINDINGS = (
    "normal abnormal mass lesion nodule tumor tumour cyst effusion edema oedema fracture "
    "pneumonia pneumothorax consolidation atelectasis cardiomegaly opacity infiltrate "
    "hemorrhage haemorrhage infarct stroke aneurysm stenosis thrombus embolism calcification "
    "carcinoma adenocarcinoma metastasis inflammation infection abscess fibrosis necrosis "
    "hyperplasia dysplasia atrophy enlargement dilation obstruction herniation degeneration "
    "benign malignant acute chronic mild moderate severe small large bilateral unilateral "
    "left right upper lower anterior posterior lateral medial proximal distal diffuse focal"
)
_WORDS = (
    "the a an of in on with without and or is are was were there this that which what where how "
    "does do shows show showing seen visible present absent evidence no yes not any finding "
    "findings image images figure patient patients case year old male female man woman child "
    "arrow arrows indicate indicates demonstrates reveals suggest suggests consistent compatible "
    "diagnosis differential treatment follow up compared prior study examination region area "
    "size shape density signal intensity contrast enhancement enhanced wall margin border "
    "answer question either human assistant hi there can i help you today organ located "
    "modality used taken plane axial coronal sagittal view stain stained staining magnification "
    "high low increased decreased surrounding adjacent within between both one two three"
)


@functools.lru_cache(maxsize=1)
def _corpus() -> tuple[str, ...]:
    modalities, anatomy, findings = _MODALITIES.split(), _ANATOMY.split(), _FINDINGS.split()
    lines = [_SYSTEM, _MODALITIES, _ANATOMY, _FINDINGS, _WORDS]
    lines += ["### Human: Hi!### Assistant: Hi there!  How can I help you today?\n###"]
    lines += [
        'USER: What is shown? ASSISTANT: The image shows. Is there? (Answer with either "Yes" or "No").'
    ]
    for (index, finding), organ in itertools.product(enumerate(findings), anatomy):
        modality = modalities[index % len(modalities)]
        lines.append(f"The {modality} of the {organ} shows {finding}. Is there {finding} in the {organ}?")
    lines += [" ".join(str(n) for n in range(100)), "0123456789 .,;:!?'\"()[]{}-+*/%=<>#_\n\t"]
    return tuple(lines)


@functools.lru_cache(maxsize=4)
def _tokenizer_json(vocab_size: int) -> str:
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers

    tokenizer = Tokenizer(models.BPE(unk_token=UNK_TOKEN))
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tokenizer.decoder = decoders.ByteLevel()
    specials = [BOS_TOKEN, EOS_TOKEN, UNK_TOKEN, PAD_TOKEN, *IMAGE_TOKENS]
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=1,
        special_tokens=specials,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(_corpus(), trainer=trainer)
    bos_id = tokenizer.token_to_id(BOS_TOKEN)
    # LLaMA convention: a single sequence starts with <s>; no </s> is appended.
    tokenizer.post_processor = processors.TemplateProcessing(
        single=f"{BOS_TOKEN} $A", pair=f"{BOS_TOKEN} $A {BOS_TOKEN} $B", special_tokens=[(BOS_TOKEN, bos_id)]
    )
    return tokenizer.to_str()


def build_tiny_tokenizer(vocab_size: int = 4096, model_max_length: int = 2048) -> PreTrainedTokenizerFast:
    """The built-in byte-level BPE tokenizer (at most ``vocab_size`` ids, same ids on every build).

    Special tokens: ``<s>`` (bos), ``</s>`` (eos), ``<unk>``, ``[PAD]`` (pad), and the image tokens
    ``<im_patch>``, ``<im_start>``, ``<im_end>`` as additional special tokens.
    """
    from tokenizers import Tokenizer

    backend = Tokenizer.from_str(_tokenizer_json(vocab_size))
    return PreTrainedTokenizerFast(
        tokenizer_object=backend,
        bos_token=BOS_TOKEN,
        eos_token=EOS_TOKEN,
        unk_token=UNK_TOKEN,
        pad_token=PAD_TOKEN,
        additional_special_tokens=list(IMAGE_TOKENS),
        model_max_length=model_max_length,
        clean_up_tokenization_spaces=False,
    )


def add_image_tokens(tokenizer: PreTrainedTokenizerBase) -> int:
    """Add ``[PAD]`` (when the tokenizer has no pad token) and the image tokens; return how many were new.

    A no-op on tokenizers of released LLaVA-Med/ExGra-Med checkpoints, which already have all four.
    """
    added = 0
    if tokenizer.pad_token is None:
        added += tokenizer.add_special_tokens({"pad_token": PAD_TOKEN})
    vocab = tokenizer.get_vocab()
    missing = [token for token in IMAGE_TOKENS if token not in vocab]
    if missing:
        added += tokenizer.add_tokens(missing, special_tokens=True)
    return added


# Tokens whose neighbours transformers 4.28's slow tokenizer did not strip: the special tokens that the
# LLaMA tokenizer_config declares as AddedToken(lstrip=False, rstrip=False). Every other added token
# ([PAD] and the image tokens, added as plain strings) had the whitespace on both sides removed.
_UNSTRIPPED = (BOS_TOKEN, EOS_TOKEN, UNK_TOKEN)


@functools.lru_cache(maxsize=4)
def _sentencepiece(model_file: str) -> Any:
    import sentencepiece

    return sentencepiece.SentencePieceProcessor(model_file=model_file)


def sentencepiece_model_file(tokenizer: PreTrainedTokenizerBase) -> Path | None:
    """The SentencePiece ``tokenizer.model`` a tokenizer was loaded from, if it is still on disk."""
    vocab_file = getattr(tokenizer, "vocab_file", None) or tokenizer.init_kwargs.get("vocab_file")
    if vocab_file and Path(vocab_file).is_file() and Path(vocab_file).suffix != ".json":
        return Path(vocab_file)
    return None


def _chunks(tokenizer: PreTrainedTokenizerBase, text: str) -> Iterator[tuple[str, int]]:
    """``(piece, start)``: added tokens and the text between them, stripped the way 4.28 stripped it."""
    added = sorted(tokenizer.get_added_vocab(), key=len, reverse=True)
    if not added:
        yield text, 0
        return
    pattern = re.compile("|".join(re.escape(token) for token in added))
    pieces: list[tuple[str, int, bool]] = []
    position = 0
    for match in pattern.finditer(text):
        pieces.append((text[position : match.start()], position, False))
        pieces.append((match.group(), match.start(), True))
        position = match.end()
    pieces.append((text[position:], position, False))
    for index, (piece, start, is_token) in enumerate(pieces):
        if not is_token:
            left = pieces[index - 1] if index > 0 else None
            right = pieces[index + 1] if index + 1 < len(pieces) else None
            if left is not None and left[0] not in _UNSTRIPPED:
                stripped = piece.lstrip()
                start += len(piece) - len(stripped)
                piece = stripped
            if right is not None and right[0] not in _UNSTRIPPED:
                piece = piece.rstrip()
        if piece:
            yield piece, start


def reference_token_spans(tokenizer: PreTrainedTokenizerBase, text: str) -> list[tuple[int, int]]:
    """Token ids of ``text`` as the reference's training tokenizer made them, with character starts.

    The reference trained with transformers 4.28's slow ``LlamaTokenizer`` (REFERENCE §4.2): the text is
    split at added tokens, whitespace beside ``[PAD]`` / image tokens is dropped, and each remaining
    piece is encoded by SentencePiece on its own (so it gets SentencePiece's dummy ``▁`` prefix). With
    the checkpoint's ``tokenizer.model`` this is exact; a tokenizer without one (the built-in BPE)
    encodes the pieces itself. No BOS is added. Returns ``[(token id, start offset in text)]``.
    """
    model_file = sentencepiece_model_file(tokenizer)
    vocab = tokenizer.get_added_vocab()
    spans: list[tuple[int, int]] = []
    for piece, start in _chunks(tokenizer, text):
        if piece in vocab:
            spans.append((vocab[piece], start))
        elif model_file is not None:
            proto = _sentencepiece(str(model_file)).encode(piece, out_type="proto")
            data = piece.encode("utf-8")
            for item in proto.pieces:
                # SentencePiece offsets are bytes; the dummy prefix piece starts at 0.
                spans.append((item.id, start + len(data[: item.begin].decode("utf-8", errors="ignore"))))
        else:
            encoded = tokenizer(piece, add_special_tokens=False, return_offsets_mapping=True)
            for token_id, (begin, _end) in zip(encoded["input_ids"], encoded["offset_mapping"], strict=True):
                spans.append((token_id, start + begin))
    return spans
