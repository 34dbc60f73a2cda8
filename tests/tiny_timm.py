"""Tiny timm towers for tests (registered with timm: open_clip's TimmModel builds towers by timm name)."""
from timm.models import register_model
from timm.models.eva import _create_eva
from timm.models.vision_transformer import _create_vision_transformer


@register_model
def tiny_siglip_vit(pretrained: bool = False, **kwargs):
    """vit_base_patch16_siglip_224's layout (no class token, attention-pool 'map' head), 32 px, 2 blocks."""
    args = dict(img_size=32, patch_size=8, embed_dim=64, depth=2, num_heads=2, class_token=False, global_pool="map")
    return _create_vision_transformer("tiny_siglip_vit", pretrained=False, **dict(args, **kwargs))


@register_model
def tiny_eva02(pretrained: bool = False, **kwargs):
    """eva02_base_patch16_clip_224's layout (SwiGLU MLP with its LayerNorm, rotary positions), 32 px, 2 blocks."""
    args = dict(img_size=32, patch_size=8, embed_dim=64, depth=2, num_heads=2, mlp_ratio=4 * 2 / 3, qkv_fused=False,
                swiglu_mlp=True, scale_mlp=True, scale_attn_inner=True, use_rot_pos_emb=True, ref_feat_shape=(4, 4))
    return _create_eva("tiny_eva02", pretrained=False, **dict(args, **kwargs))
