# RetinaNet + FPN with SOFT-Large-Norm on COCO 2017, 1x. Published: 45.3 box AP, 74M parameters.
_base_ = './retinanet_soft-t-norm_fpn_1x_coco.py'
model = dict(backbone=dict(arch='large'))
