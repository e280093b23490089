from glob import glob

from setuptools import find_packages, setup

package_name = 'seg_perception'

ROS_WHEELS = ['ros-rclpy[fastrtps]', 'ros-sensor-msgs', 'ros-nav-msgs', 'ros-std-msgs', 'ros-geometry-msgs',
              'ros-diagnostic-msgs']
# The same packages built for Jazzy (the LTS): PyPI names them ros-jazzy-*.
ROS_JAZZY_WHEELS = ['ros-jazzy-' + name[len('ros-'):] for name in ROS_WHEELS]
TRAIN = ['torch==2.13.0', 'onnx>=1.16', 'onnxscript', 'pybullet>=3.2', 'matplotlib', 'albumentations', 'tqdm']

setup(
    name=package_name,
    version='0.1.0',
    packages=find_packages(exclude=['test']),
    data_files=[
        ('share/ament_index/resource_index/packages', ['resource/' + package_name]),
        # where `ros2 run`/launch_ros look; each runs bin/<same name> (see scripts/segmentation_node)
        ('lib/' + package_name, ['scripts/segmentation_node', 'scripts/segmentation_lifecycle_node']),
        ('share/' + package_name, ['package.xml']),
        ('share/' + package_name + '/launch', glob('launch/*.py')),
        ('share/' + package_name + '/config', glob('config/*.yaml') + glob('config/*.xml')),
        ('share/' + package_name + '/config/train', glob('config/train/*.yaml')),
        ('share/' + package_name + '/models', glob('models/*')),
        ('share/' + package_name + '/samples/scenes_sample', glob('samples/scenes_sample/*')),
    ],
    python_requires='>=3.10',
    install_requires=['numpy', 'opencv-python-headless', 'onnxruntime', 'pyyaml', 'rosbags'],
    extras_require={
        'ros': ROS_WHEELS,
        'ros-jazzy': ROS_JAZZY_WHEELS,
        'train': TRAIN,
        'replay': ['matplotlib', 'tqdm'],   # seg-perception replay / demo (report plots, progress bar)
        'test': ['pytest', 'pytest-timeout', 'ruff', 'hypothesis'] + TRAIN,
    },
    zip_safe=True,
    maintainer='seg_perception developers',
    maintainer_email='seg-perception@example.com',
    description='Semantic segmentation and costmaps for ROS 2 cameras with ONNX Runtime',
    license='Apache-2.0',
    entry_points={
        'console_scripts': [
            'segmentation_node = seg_perception.node:main',
            'segmentation_lifecycle_node = seg_perception.node:lifecycle_main',
            'seg-perception = seg_perception.offline.cli:main',
        ],
    },
)
