# Schedule shared by the CPU demo configs: 600 iterations of AdamW from scratch with warmup and
# cosine decay, no weight decay on norms and position embeddings, gradient clipping, one
# evaluation at the end. (Hooks stay in the configs: default_runtime.py of mmdet/mmseg sets them.)
max_iters = 600
train_cfg = dict(type='IterBasedTrainLoop', max_iters=max_iters, val_interval=max_iters)
val_cfg = dict(type='ValLoop')
test_cfg = dict(type='TestLoop')
optim_wrapper = dict(
    type='OptimWrapper',
    optimizer=dict(type='AdamW', lr=1e-3, weight_decay=1e-4),
    paramwise_cfg=dict(custom_keys=dict(pos_embed=dict(decay_mult=0.0), norm=dict(decay_mult=0.0))),
    clip_grad=dict(max_norm=10.0, norm_type=2))
param_scheduler = [
    dict(type='LinearLR', start_factor=0.01, by_epoch=False, begin=0, end=50),
    dict(type='CosineAnnealingLR', by_epoch=False, begin=50, end=max_iters, eta_min=1e-5),
]
randomness = dict(seed=0)
