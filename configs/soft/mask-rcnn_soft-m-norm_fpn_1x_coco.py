# Mask R-CNN + FPN with SOFT-Medium-Norm on COCO 2017, 1x. Published: 46.6 box AP, 42.0 mask AP, 65M parameters.
_base_ = './mask-rcnn_soft-t-norm_fpn_1x_coco.py'
model = dict(backbone=dict(arch='medium'), neck=dict(in_channels=[64, 128, 288, 512]))
