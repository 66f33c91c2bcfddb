"""Every normalisation layer of the five families against the official constructors.

The table is written from the official architectures' descriptions (not from our modules): for each model, module
path patterns (full match, `N` = any index) with the expected kind, eps, affine flag and group count. An official
`nn.LayerNorm(dim)` means torch's defaults: eps 1e-5, with weight and bias. Affine flags agree with the released key
lists (assets/layouts/): a norm with no `.weight`/`.bias` there has no affine parameters. Rows whose constructor
the official descriptions leave unstated carry the source they were taken from in their comment.

Every norm a model holds must match exactly one row of its table, and every row must match at least one norm, so a
new norm layer (or a renamed one) has to be added here with its official constructor.
"""
import re

import pytest
import torch
from torch import nn

from engine.config import load_config
from models import build_model
from models.eqtok.dino_disc import BatchNormLocal, DinoDiscriminator
from models.eqtok.vit import build_dino, build_dinov2
from tokenizer.vqgan import build_vqmodel

LN, GN, BNL = "LayerNorm", "GroupNorm", "BatchNormLocal"
I = r"\d+"

# (path pattern, kind, eps, affine, groups)
BERT_LN = (r"(token_emb|context_embed|x_embedder)\.LayerNorm", LN, 1e-6, True, None)  # BertEmbeddings LN(eps 1e-6)
MLM_LN = (r"mlm_layer\.ln", LN, 1e-5, True, None)  # MlmLayer: nn.LayerNorm(dim) (eps unstated in the spec text)
LDM_GN = 1e-6  # taming/LDM `Normalize`: GroupNorm(32, C, eps 1e-6, affine)

TABLES = {
    # AutoNAT U-ViT (ImprovedNAT libs/nat_model.py::UViT)
    "nat": [
        BERT_LN,
        (rf"(in_blocks\.{I}|mid_block|out_blocks\.{I})\.norm[12]", LN, 1e-5, True, None),  # default nn.LayerNorm
        (r"norm", LN, 1e-5, True, None),  # final norm_layer(embed_dim), norm_layer = nn.LayerNorm (spec: unstated)
        MLM_LN,
    ],
    # ENAT (ENAT libs/models.py::DiT)
    "enat": [
        BERT_LN,
        (rf"blocks\.{I}\.(norm1|norm1_|norm2)", LN, 1e-6, False, None),  # LN without affine, eps 1e-6
        (r"prev_proj\.norm", LN, 1e-6, True, None),  # PrevProj LN(eps 1e-6); weight/bias in the key list
        (r"norm", LN, 1e-5, True, None),  # final nn.LayerNorm(D), affine, eps 1e-5
        MLM_LN,
    ],
    # NiT (nit_model.py)
    "nit": [
        (rf"blocks\.{I}\.norm[12]", LN, 1e-6, False, None),  # LayerNorm(eps 1e-6, no affine)
        (rf"blocks\.{I}\.attn\.[qk]_norm", LN, 1e-5, True, None),  # nn.LayerNorm(head_dim): eps 1e-5, affine
        (r"final_layer\.norm_final", LN, 1e-6, False, None),  # the same adaLN "LN" (eps 1e-6, no affine)
    ],
    # equivariant generator (generator/equ_modeling.py, norm_layer = partial(nn.LayerNorm, eps=1e-6))
    "eqar": [
        (rf"encoder_blocks\.{I}\.norm[12]", LN, 1e-6, True, None),  # from norm_layer
        (rf"encoder_blocks\.{I}\.cross_(cond_)?norm", LN, 1e-5, True, None),  # bare nn.LayerNorm(dim): eps 1e-5
        (r"z_proj_ln", LN, 1e-6, True, None),  # nn.LayerNorm(D, eps=1e-6) (spec: unstated; MAR lineage)
        (r"encoder_norm", LN, 1e-6, True, None),  # norm_layer(D) (spec: unstated)
        # flow head = MAR SimpleMLPAdaLN (spec: unstated eps; affine flags from the key list)
        (rf"diffloss\.net\.res_blocks\.{I}\.in_ln", LN, 1e-6, True, None),
        (r"diffloss\.net\.final_layer\.norm_final", LN, 1e-6, False, None),
    ],
    # column tokenizer + the project's default conv discriminator
    "eqtok": [
        (rf"(encoder|decoder)\.(down|up)\.{I}\.block\.{I}\.norm[12]", GN, LDM_GN, True, 32),
        (rf"(encoder|decoder)\.(down|up)\.{I}\.attn\.{I}\.norm", GN, LDM_GN, True, 32),
        (r"(encoder|decoder)\.mid\.(block_[12]\.norm[12]|attn_1\.norm)", GN, LDM_GN, True, 32),
        (r"(encoder|decoder|semantic_decoder)\.norm_out", GN, LDM_GN, True, 32),
        (rf"semantic_decoder\.down\.{I}\.block\.{I}\.norm[12]", GN, LDM_GN, True, 32),
        # no official counterpart: the project's small patch discriminator (nn.GroupNorm(8, C), torch defaults)
        (rf"loss\.discriminator\.main\.{I}", GN, 1e-5, True, 8),
    ],
    # the release's DINO discriminator heads: BatchNormLocal(C, eps=norm_eps=1e-6), affine (spec: unstated)
    "dino_disc_bn": [(rf"heads\.{I}\.(0|1\.fn)\.1", BNL, 1e-6, True, None)],
    "dino_disc_gn": [(rf"heads\.{I}\.(0|1\.fn)\.1", GN, 1e-6, True, 32)],  # norm_type 'gn'
    # frozen backbones: DINO ViT-S/16 (LayerNorm eps norm_eps=1e-6) and DINOv2 (LayerNorm eps 1e-6) (spec: unstated)
    "dino_vit": [(rf"blocks\.{I}\.norm[12]", LN, 1e-6, True, None), (r"norm", LN, 1e-6, True, None)],
    "dinov2_vit": [(rf"blocks\.{I}\.norm[12]", LN, 1e-6, True, None), (r"norm", LN, 1e-6, True, None)],
    # MAGE VQGAN (taming): ResnetBlock GroupNorm(32, eps 1e-6); norm_out the same helper (spec: named, not spelled)
    "vqgan": [
        (rf"(encoder|decoder)\.(down|up)\.{I}\.block\.{I}\.norm[12]", GN, LDM_GN, True, 32),
        (r"(encoder|decoder)\.mid\.block_[12]\.norm[12]", GN, LDM_GN, True, 32),
        (r"(encoder|decoder)\.norm_out", GN, LDM_GN, True, 32),
    ],
}


def _family(config):
    return lambda: build_model(load_config(config, []))[0]


BUILDERS = {
    "nat": _family("configs/debug/autonat_debug.yaml"),
    "enat": _family("configs/debug/enat_debug.yaml"),
    "nit": _family("configs/debug/nit_debug.yaml"),
    "eqar": _family("configs/debug/eqar_debug.yaml"),
    "eqtok": _family("configs/debug/eqtok_debug.yaml"),
    "dino_disc_bn": lambda: DinoDiscriminator(build_dino("debug")),
    "dino_disc_gn": lambda: DinoDiscriminator(build_dino("debug"), norm="gn"),
    "dino_vit": lambda: build_dino("debug"),
    "dinov2_vit": lambda: build_dinov2("debug"),
    "vqgan": lambda: build_vqmodel("tiny"),
}


def _is_norm(mod) -> bool:
    return isinstance(mod, (nn.LayerNorm, nn.GroupNorm, BatchNormLocal, nn.modules.batchnorm._NormBase)) or \
        "norm" in type(mod).__name__.lower() and not isinstance(mod, (nn.Sequential, nn.ModuleList))


def _describe(mod):
    affine = (mod.weight is not None and mod.bias is not None) if isinstance(mod, nn.LayerNorm) else \
        getattr(mod, "affine", None) if isinstance(mod, nn.GroupNorm) else \
        isinstance(getattr(mod, "weight", None), nn.Parameter)
    if isinstance(mod, nn.LayerNorm):
        assert (mod.weight is None) == (mod.bias is None) == (not mod.elementwise_affine)
    return type(mod).__name__, mod.eps, affine, getattr(mod, "num_groups", None)


@pytest.mark.parametrize("name", list(TABLES))
def test_every_norm_matches_the_official_constructor(name):
    torch.manual_seed(0)
    model = BUILDERS[name]()
    rows = TABLES[name]
    used = [0] * len(rows)
    bad, found = [], 0
    for path, mod in model.named_modules():
        if not _is_norm(mod):
            continue
        found += 1
        hits = [i for i, r in enumerate(rows) if re.fullmatch(r[0], path)]
        if len(hits) != 1:
            bad.append(f"{path}: matches {len(hits)} rows of the table")
            continue
        used[hits[0]] += 1
        kind, eps, affine, groups = rows[hits[0]][1:]
        got = _describe(mod)
        if got[0] != kind or got[1] != pytest.approx(eps, rel=1e-9) or got[2] != affine or got[3] != groups:
            bad.append(f"{path}: {got} != expected {(kind, eps, affine, groups)}")
    assert found and not bad, "\n".join(bad)
    assert all(used), [rows[i][0] for i, n in enumerate(used) if not n]
