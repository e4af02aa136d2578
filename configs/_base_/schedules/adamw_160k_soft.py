# 160k-iteration ADE20K schedule with the optimizer of mmseg's transformer UperNets (Swin, Twins): AdamW lr 6e-5,
# weight decay 0.01, 1500 iterations of linear warmup, then poly decay. No weight decay on normalization layers
# (by type) and on the learned position embeddings; no gradient clipping (none of those peers clips).
_base_ = 'mmseg::_base_/schedules/schedule_160k.py'

optim_wrapper = dict(
    _delete_=True,
    type='OptimWrapper',
    optimizer=dict(type='AdamW', lr=6e-5, betas=(0.9, 0.999), weight_decay=0.01),
    paramwise_cfg=dict(norm_decay_mult=0.0, custom_keys={'pos_embed': dict(decay_mult=0.0)}))
param_scheduler = [
    dict(type='LinearLR', start_factor=1e-6, by_epoch=False, begin=0, end=1500),
    dict(type='PolyLR', eta_min=0.0, power=1.0, begin=1500, end=160000, by_epoch=False),
]
