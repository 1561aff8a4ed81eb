"""What a deployment stores: the integer export of our PTQ, and the size of any model as stored."""
