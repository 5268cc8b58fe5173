"""Reading, preprocessing, sharding and streaming 3D medical volumes. No Lightning here."""
