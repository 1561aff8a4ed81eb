"""Our PTQ (``quant=custom_ptq``) and the steps that recover low-bit accuracy around it."""
