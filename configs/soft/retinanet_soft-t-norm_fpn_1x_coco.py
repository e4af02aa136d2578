# RetinaNet + FPN with SOFT-Tiny-Norm on COCO 2017, 1x, 8 GPUs x 2 images.
# Published (IJCV 2024): 40.0 box AP, 23M parameters.
_base_ = [
    'mmdet::_base_/models/retinanet_r50_fpn.py',
    'mmdet::_base_/datasets/coco_detection.py',
    '../_base_/schedules/adamw_1x_soft.py',
    'mmdet::_base_/default_runtime.py',
]
custom_imports = dict(imports=['mmsoft'], allow_failed_imports=False)

model = dict(
    backbone=dict(
        _delete_=True,
        type='mmsoft.SOFT',
        arch='tiny',
        sym_norm=True,
        out_indices=(0, 1, 2, 3),
        with_cls_token=True,  # stage 4 attends over the ImageNet class token: the pretrained function
        drop_path_rate=0.1,
        init_cfg=None),  # set dict(type='Pretrained', checkpoint=...) for the ImageNet weights
    neck=dict(in_channels=[64, 128, 320, 512]))
