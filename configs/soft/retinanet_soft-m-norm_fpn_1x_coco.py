# RetinaNet + FPN with SOFT-Medium-Norm on COCO 2017, 1x. Published: 44.3 box AP, 55M parameters.
_base_ = './retinanet_soft-t-norm_fpn_1x_coco.py'
model = dict(backbone=dict(arch='medium'), neck=dict(in_channels=[64, 128, 288, 512]))
