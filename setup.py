"""ament_python package adaptive_offload (src layout)."""

from glob import glob

from setuptools import find_packages, setup

PACKAGE = 'adaptive_offload'

setup(
    name=PACKAGE,
    version='0.1.0',
    packages=find_packages('src'),
    package_dir={'': 'src'},
    package_data={PACKAGE: ['interfaces/vision_msgs/msg/*.msg']},
    data_files=[
        ('share/ament_index/resource_index/packages', [f'resource/{PACKAGE}']),
        (f'share/{PACKAGE}', ['package.xml', 'requirements.txt']),
        (f'share/{PACKAGE}/launch', glob('launch/*.launch.py')),
        (f'share/{PACKAGE}/config', glob('config/*.yaml') + glob('config/*.rviz') +
         glob('config/*.json')),
        (f'share/{PACKAGE}/config/scenarios', glob('config/scenarios/*.yaml')),
        (f'share/{PACKAGE}/config/split_payloads', glob('config/split_payloads/*.yaml')),
        (f'share/{PACKAGE}/config/scenarios/fleet', glob('config/scenarios/fleet/*.yaml')),
        (f'share/{PACKAGE}/models', glob('models/*.pt') + glob('models/*.json')),
    ],
    install_requires=['setuptools'],
    extras_require={'test': ['pytest']},
    zip_safe=False,
    maintainer='adaptive_offload maintainers',
    maintainer_email='maintainers@adaptive-offload.invalid',
    description='Adaptive edge/cloud offloading of robot perception for ROS 2.',
    license='Apache-2.0',
    python_requires='>=3.10',
    entry_points={
        'console_scripts': [
            'edge_inference = edge_inference.node:main',
            'cloud_bridge = cloud_bridge.node:main',
            'offload_manager = offload_manager.node:main',
            'health_monitor = health_monitor.node:main',
            'adaptive-offload = offload_runtime.cli:main',
        ],
    },
)
