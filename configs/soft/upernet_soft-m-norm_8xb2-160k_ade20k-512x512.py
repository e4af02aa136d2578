# UperNet with SOFT-Medium-Norm on ADE20K, 512x512, 160k. Published: 48.0 mIoU, 76M parameters.
_base_ = './upernet_soft-s-norm_8xb2-160k_ade20k-512x512.py'
model = dict(
    backbone=dict(arch='medium'),
    decode_head=dict(in_channels=[64, 128, 288, 512]),
    auxiliary_head=dict(in_channels=288))
