# UperNet with a SOFT-Small-Norm backbone on ADE20K, 512x512 crops, 160k iterations
# (8 GPUs x 2 images). Optimizer as mmseg's transformer UperNets (AdamW 6e-5, wd 0.01, warmup then
# poly decay, no weight decay on norms and position embeddings). Published: 46.2 mIoU, 54M params.
_base_ = [
    'mmseg::_base_/models/upernet_r50.py',
    'mmseg::_base_/datasets/ade20k.py',
    'mmseg::_base_/default_runtime.py',
    'mmseg::_base_/schedules/schedule_160k.py',
]
custom_imports = dict(imports=['mmsoft'], allow_failed_imports=False)

crop_size = (512, 512)
data_preprocessor = dict(size=crop_size)
model = dict(
    data_preprocessor=data_preprocessor,
    pretrained=None,
    backbone=dict(
        _delete_=True,
        type='mmsoft.SOFT',
        arch='small',
        sym_norm=True,
        out_indices=(0, 1, 2, 3),
        drop_path_rate=0.1,
        init_cfg=None),  # set dict(type='Pretrained', checkpoint=...) for ImageNet weights
    decode_head=dict(in_channels=[64, 128, 320, 512], num_classes=150),
    auxiliary_head=dict(in_channels=320, in_index=2, num_classes=150))

optim_wrapper = dict(
    _delete_=True,
    type='OptimWrapper',
    optimizer=dict(type='AdamW', lr=6e-5, betas=(0.9, 0.999), weight_decay=0.01),
    paramwise_cfg=dict(custom_keys=dict(pos_embed=dict(decay_mult=0.0), norm=dict(decay_mult=0.0))))
param_scheduler = [
    dict(type='LinearLR', start_factor=1e-6, by_epoch=False, begin=0, end=1500),
    dict(type='PolyLR', eta_min=0.0, power=1.0, begin=1500, end=160000, by_epoch=False),
]
train_dataloader = dict(batch_size=2)
