# 1x (12 epochs) COCO schedule with the optimizer mmdet's pyramid transformers use (configs/pvt: AdamW lr 1e-4,
# weight decay 1e-4, 8 GPUs x 2 images; step decay at epochs 8 and 11 from mmdet's schedule_1x). No weight decay on
# normalization layers (LayerNorm/BatchNorm/GroupNorm, by type) and on the learned position embeddings. No gradient
# clipping: none of the peers' 1x recipes (PVT, PVTv2, Swin) clips.
_base_ = 'mmdet::_base_/schedules/schedule_1x.py'

optim_wrapper = dict(
    type='OptimWrapper',
    optimizer=dict(_delete_=True, type='AdamW', lr=1e-4, betas=(0.9, 0.999), weight_decay=1e-4),
    paramwise_cfg=dict(norm_decay_mult=0.0, custom_keys={'pos_embed': dict(decay_mult=0.0)}))
auto_scale_lr = dict(enable=False, base_batch_size=16)
