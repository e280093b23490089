"""The class set of the project's rendered scenes (ids are fixed: evaluation and costmaps rely on them)."""

IGNORE_INDEX = 255

# id -> (name, RGB colour)
SCENE_CLASSES = (
    ('floor', (128, 64, 128)),      # 0 drivable ground
    ('wall', (102, 102, 156)),      # 1
    ('obstacle', (190, 153, 153)),  # 2 static: boxes, tables, shelves, furniture
    ('person', (220, 20, 60)),      # 3
    ('robot', (0, 0, 142)),         # 4 robot or vehicle
    ('background', (70, 130, 180)),  # 5 sky / void / far
)
SCENE_CLASS_NAMES = tuple(name for name, _ in SCENE_CLASSES)
SCENE_PALETTE = tuple(colour for _, colour in SCENE_CLASSES)
FLOOR, WALL, OBSTACLE, PERSON, ROBOT, BACKGROUND = range(len(SCENE_CLASSES))
