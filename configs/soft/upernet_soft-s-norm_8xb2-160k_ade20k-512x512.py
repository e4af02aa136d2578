# UperNet with SOFT-Small-Norm on ADE20K, 512x512 crops, 160k iterations, 8 GPUs x 2 images.
# Published (IJCV 2024): 46.2 mIoU (single scale), 54M parameters.
_base_ = [
    'mmseg::_base_/models/upernet_r50.py',
    'mmseg::_base_/datasets/ade20k.py',
    '../_base_/schedules/adamw_160k_soft.py',
    'mmseg::_base_/default_runtime.py',
]
custom_imports = dict(imports=['mmsoft'], allow_failed_imports=False)

crop_size = (512, 512)
model = dict(
    data_preprocessor=dict(size=crop_size),
    pretrained=None,
    backbone=dict(
        _delete_=True,
        type='mmsoft.SOFT',
        arch='small',
        sym_norm=True,
        out_indices=(0, 1, 2, 3),
        with_cls_token=True,  # stage 4 attends over the ImageNet class token: the pretrained function
        drop_path_rate=0.1,
        init_cfg=None),  # set dict(type='Pretrained', checkpoint=...) for the ImageNet weights
    decode_head=dict(in_channels=[64, 128, 320, 512], num_classes=150),
    auxiliary_head=dict(in_channels=320, in_index=2, num_classes=150))
train_dataloader = dict(batch_size=2)
