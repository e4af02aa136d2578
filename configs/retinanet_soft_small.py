# RetinaNet + FPN with a SOFT-Small-Norm backbone on COCO 2017, 1x schedule.
# Same recipe mmdet uses for its pyramid transformers (configs/pvt: AdamW lr 1e-4, wd 1e-4,
# 12 epochs, 8 GPUs x 2 images); published result: 42.8 box AP, 34M parameters.
_base_ = [
    'mmdet::_base_/models/retinanet_r50_fpn.py',
    'mmdet::_base_/datasets/coco_detection.py',
    'mmdet::_base_/schedules/schedule_1x.py',
    'mmdet::_base_/default_runtime.py',
]
custom_imports = dict(imports=['mmsoft'], allow_failed_imports=False)

model = dict(
    backbone=dict(
        _delete_=True,
        type='mmsoft.SOFT',
        arch='small',
        sym_norm=True,
        out_indices=(0, 1, 2, 3),
        drop_path_rate=0.1,
        init_cfg=None),  # set dict(type='Pretrained', checkpoint=...) for ImageNet weights
    neck=dict(in_channels=[64, 128, 320, 512]))

optim_wrapper = dict(optimizer=dict(_delete_=True, type='AdamW', lr=1e-4, weight_decay=1e-4))
train_dataloader = dict(batch_size=2, num_workers=2)
auto_scale_lr = dict(enable=False, base_batch_size=16)
